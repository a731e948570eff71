//! The CSV files `neo4j-admin database import full` reads, written from a
//! verified logical export in one streaming pass (`import.rs` runs the tool).
//!
//! Properties vary per node, and a neo4j-admin header types its columns, so
//! rows are grouped by their signature (sorted property keys and their CSV
//! types): one file per signature, its header on its first line. At most
//! [`MAX_GROUPS`] files are open; an export with more signatures is refused
//! before anything changes (the transactional load takes any shape).
//!
//! Lossless or not at all: a value goes into a CSV cell only in a form
//! neo4j-admin reads back exactly (integers and JSON floats as written,
//! NaN/±Infinity as Java parses them, strings quoted with `"` doubled,
//! temporal values as the ISO text Neo4j printed, points with their SRID,
//! non-empty arrays joined by [`ARRAY_DELIMITER`]). Whatever it cannot carry
//! exactly (empty lists and byte arrays, empty strings inside a list,
//! strings with a carriage return or, inside a list, the array delimiter, property keys
//! that are not plain identifiers, any other type) stays out of the CSV: the
//! entity gets a marker ([`FIX_KEY`], and on a node [`TEMP_LABEL`]) and the
//! property, as the export wrote it, goes to a fix-up file that `import.rs`
//! applies by Cypher after the import, with the transactional load's own
//! decoding (`props_bolt.rs`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::TEMP_LABEL;

/// Between the elements of an array cell (and the labels of a node): the
/// ASCII unit separator, which no label, type or array element the export
/// holds may contain (an element that does is fixed up; a label or type
/// that does refuses the import).
pub(super) const ARRAY_DELIMITER: char = '\u{1f}';
/// The fix-up marker: the property (an integer, the entity's line in its
/// fix-up file) that the import sets and the fix-up removes.
pub(super) const FIX_KEY: &str = "__itb_fix";
/// More signatures than this (files, each open while the export is read)
/// refuse the import mode.
pub(super) const MAX_GROUPS: usize = 200;

/// Why the export cannot go through neo4j-admin import (nothing changed).
pub(super) struct Unsuitable(pub String);

/// A failure while writing the files.
pub(super) enum CsvError {
    Unsuitable(Unsuitable),
    Io(std::io::Error),
    /// A line that the verification passed does not decode here.
    Damaged(String),
}

impl From<std::io::Error> for CsvError {
    fn from(e: std::io::Error) -> Self {
        CsvError::Io(e)
    }
}

/// What was written: the files to hand to neo4j-admin and what the import
/// leaves to do afterwards.
#[derive(Debug, Default)]
pub(super) struct CsvSet {
    pub node_files: Vec<PathBuf>,
    pub relationship_files: Vec<PathBuf>,
    /// The export's constraint and index statements, for after the import.
    pub schema: Vec<String>,
    pub nodes: u64,
    pub relationships: u64,
    /// Entities with properties left to the fix-up, and their files.
    pub node_fixups: u64,
    pub relationship_fixups: u64,
    pub node_fixup_file: PathBuf,
    pub relationship_fixup_file: PathBuf,
    /// Whether some cell holds a line break (neo4j-admin must then read
    /// fields across lines, which is slower).
    pub multiline: bool,
    /// The longest cell, in bytes (neo4j-admin's read buffer must hold it).
    pub longest_cell: usize,
    /// Bytes written, fix-up files included.
    pub bytes: u64,
}

/// One line of the export, as this writer needs it.
#[derive(Deserialize)]
pub(super) struct Entity<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    labels: Option<Vec<String>>,
    #[serde(default, borrow)]
    rel_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    start: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    end: Option<Cow<'a, str>>,
    #[serde(default)]
    statement: Option<String>,
    #[serde(default, borrow)]
    props: Option<Props<'a>>,
}

/// `{key: [TYPE, value]}` with each value's JSON text as the export wrote it.
#[derive(Default)]
struct Props<'a>(Vec<(String, String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Props<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PropsVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for PropsVisitor<'a> {
            type Value = Props<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of property name to [type, value]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Props<'a>, A::Error> {
                let mut props = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let (kind, value): (String, &'de RawValue) = map.next_value()?;
                    props.push((key, kind, value));
                }
                Ok(Props(props))
            }
        }
        d.deserialize_map(PropsVisitor(std::marker::PhantomData))
    }
}

/// A column: property key and neo4j-admin type.
type Column = (String, &'static str);

/// Rows of one shape: nodes or relationships, with these property columns,
/// with or without the fix-up marker.
#[derive(Hash, PartialEq, Eq, Clone)]
struct Signature {
    relationships: bool,
    columns: Vec<Column>,
    fixup: bool,
}

/// Writes the CSV files of one export into `dir`.
pub(super) struct CsvWriter {
    dir: PathBuf,
    groups: HashMap<Signature, BufWriter<File>>,
    node_fixups: BufWriter<File>,
    relationship_fixups: BufWriter<File>,
    set: CsvSet,
    /// Reused for each row.
    row: String,
    cell: String,
}

impl CsvWriter {
    pub fn create(dir: &Path) -> std::io::Result<CsvWriter> {
        let set = CsvSet {
            node_fixup_file: dir.join("node-fixups.ndjson"),
            relationship_fixup_file: dir.join("relationship-fixups.ndjson"),
            ..Default::default()
        };
        Ok(CsvWriter {
            dir: dir.to_path_buf(),
            groups: HashMap::new(),
            node_fixups: BufWriter::new(File::create(&set.node_fixup_file)?),
            relationship_fixups: BufWriter::new(File::create(&set.relationship_fixup_file)?),
            set,
            row: String::new(),
            cell: String::new(),
        })
    }

    /// Take one line of the export.
    pub fn line(&mut self, bytes: &[u8]) -> Result<(), CsvError> {
        let line: Entity = serde_json::from_slice(bytes)
            .map_err(|e| CsvError::Damaged(format!("a line of the export does not decode: {e}")))?;
        match line.kind.as_ref() {
            "constraint" | "index" => self.set.schema.extend(line.statement),
            "node" => self.entity(line, false)?,
            "rel" => self.entity(line, true)?,
            _ => {}
        }
        Ok(())
    }

    /// Close every file: the set to import.
    pub fn finish(mut self) -> std::io::Result<CsvSet> {
        if self.set.node_files.is_empty() {
            // neo4j-admin wants nodes: an empty graph is a file of no rows.
            let path = self.dir.join("nodes-none.csv");
            std::fs::write(&path, ":ID,:LABEL\n")?;
            self.set.node_files.push(path);
        }
        for (_, mut file) in self.groups.drain() {
            file.flush()?;
            file.get_ref().sync_all()?;
        }
        self.node_fixups.flush()?;
        self.relationship_fixups.flush()?;
        Ok(self.set)
    }

    fn entity(&mut self, line: Entity, relationship: bool) -> Result<(), CsvError> {
        let mut direct: Vec<(String, &'static str, String)> = Vec::new();
        let mut fixed = String::new();
        for (key, kind, value) in line.props.unwrap_or_default().0 {
            if key == FIX_KEY {
                return Err(unsuitable(format!(
                    "the export has a property named {FIX_KEY}, which the import uses as its marker"
                )));
            }
            self.cell.clear();
            match cell(&kind, value, &mut self.cell).filter(|_| plain_key(&key)) {
                Some(csv_type) => direct.push((key, csv_type, self.cell.clone())),
                None => {
                    fixed.push(if fixed.is_empty() { '{' } else { ',' });
                    fixed.push_str(&serde_json::to_string(&key).expect("a string serialises"));
                    fixed.push_str(":[");
                    fixed.push_str(&serde_json::to_string(&kind).expect("a string serialises"));
                    fixed.push(',');
                    fixed.push_str(value.get());
                    fixed.push(']');
                }
            }
        }
        direct.sort_by(|a, b| a.0.cmp(&b.0));
        let fixup = !fixed.is_empty();
        let fix_number = if fixup {
            let (file, count) = if relationship {
                (
                    &mut self.relationship_fixups,
                    &mut self.set.relationship_fixups,
                )
            } else {
                (&mut self.node_fixups, &mut self.set.node_fixups)
            };
            writeln!(file, "{{\"props\":{fixed}}}}}")?;
            self.set.bytes += fixed.len() as u64 + 12;
            *count += 1;
            *count - 1
        } else {
            0
        };
        self.row.clear();
        if relationship {
            let ends = (line.start, line.end, line.rel_type);
            let (Some(start), Some(end), Some(rel_type)) = ends else {
                return Err(CsvError::Damaged(
                    "a relationship without type or endpoints".into(),
                ));
            };
            if rel_type.contains(['\r', ARRAY_DELIMITER]) {
                return Err(unsuitable(format!(
                    "relationship type {rel_type:?} holds a character the CSV files cannot carry"
                )));
            }
            quoted(&mut self.row, &start);
            self.row.push(',');
            quoted(&mut self.row, &end);
            self.row.push(',');
            quoted(&mut self.row, &rel_type);
            self.set.relationships += 1;
        } else {
            let mut labels = line.labels.unwrap_or_default();
            if fixup {
                labels.push(TEMP_LABEL.into());
            }
            if let Some(odd) = labels.iter().find(|l| l.contains(['\r', ARRAY_DELIMITER])) {
                return Err(unsuitable(format!(
                    "label {odd:?} holds a character the CSV files cannot carry"
                )));
            }
            quoted(&mut self.row, line.id.as_deref().unwrap_or_default());
            self.row.push(',');
            if !labels.is_empty() {
                quoted(&mut self.row, &labels.join(&ARRAY_DELIMITER.to_string()));
            }
            self.set.nodes += 1;
        }
        for (_, _, text) in &direct {
            self.row.push(',');
            self.row.push_str(text);
            self.set.longest_cell = self.set.longest_cell.max(text.len());
        }
        if fixup {
            self.row.push_str(&format!(",{fix_number}"));
        }
        self.set.multiline |= self.row.contains('\n');
        self.row.push('\n');
        let signature = Signature {
            relationships: relationship,
            columns: direct.into_iter().map(|(k, t, _)| (k, t)).collect(),
            fixup,
        };
        self.write_row(signature)
    }

    /// The row in `self.row` into its signature's file (created, with its
    /// header, on first use).
    fn write_row(&mut self, signature: Signature) -> Result<(), CsvError> {
        self.set.bytes += self.row.len() as u64;
        if let Some(file) = self.groups.get_mut(&signature) {
            return Ok(file.write_all(self.row.as_bytes())?);
        }
        if self.groups.len() >= MAX_GROUPS {
            return Err(unsuitable(format!(
                "the export's nodes and relationships come in more than {MAX_GROUPS} shapes (property names and types), one CSV file each"
            )));
        }
        let (kind, mut header) = if signature.relationships {
            ("relationships", String::from(":START_ID,:END_ID,:TYPE"))
        } else {
            ("nodes", String::from(":ID,:LABEL"))
        };
        for (key, csv_type) in &signature.columns {
            header.push_str(&format!(",{key}:{csv_type}"));
        }
        if signature.fixup {
            header.push_str(&format!(",{FIX_KEY}:long"));
        }
        let path = self
            .dir
            .join(format!("{kind}-{:03}.csv", self.groups.len()));
        let mut file = BufWriter::with_capacity(64 * 1024, File::create(&path)?);
        writeln!(file, "{header}")?;
        file.write_all(self.row.as_bytes())?;
        match signature.relationships {
            true => self.set.relationship_files.push(path),
            false => self.set.node_files.push(path),
        }
        self.groups.insert(signature, file);
        Ok(())
    }
}

fn unsuitable(message: String) -> CsvError {
    CsvError::Unsuitable(Unsuitable(message))
}

/// A property key neo4j-admin's header reads as it is: letters, digits, `_`
/// (a key with `:`, a space or a quote could be cut differently).
fn plain_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `text` as one quoted CSV field.
fn quoted(out: &mut String, text: &str) {
    out.push('"');
    out.push_str(&text.replace('"', "\"\""));
    out.push('"');
}

/// The neo4j-admin type of a stored scalar type, and whether its text is quoted.
fn scalar_type(kind: &str) -> Option<(&'static str, bool)> {
    Some(match kind {
        "INTEGER" => ("long", false),
        "FLOAT" => ("double", false),
        "BOOLEAN" => ("boolean", false),
        "STRING" => ("string", true),
        "DATE" => ("date", true),
        "LOCAL TIME" => ("localtime", true),
        "ZONED TIME" => ("time", true),
        "LOCAL DATETIME" => ("localdatetime", true),
        "ZONED DATETIME" => ("datetime", true),
        "DURATION" => ("duration", true),
        "POINT" => ("point", true),
        _ => return None,
    })
}

/// The array type of `LIST<…>` scalars.
fn array_type(csv_type: &str) -> &'static str {
    match csv_type {
        "long" => "long[]",
        "double" => "double[]",
        "boolean" => "boolean[]",
        "string" => "string[]",
        "date" => "date[]",
        "localtime" => "localtime[]",
        "time" => "time[]",
        "localdatetime" => "localdatetime[]",
        "datetime" => "datetime[]",
        "duration" => "duration[]",
        _ => "point[]",
    }
}

/// The CSV cell of a stored value (`kind`, its JSON `value`) written into
/// `out`, and its neo4j-admin type; None when neo4j-admin cannot carry it
/// exactly (the fix-up sets it).
fn cell(kind: &str, value: &RawValue, out: &mut String) -> Option<&'static str> {
    if kind == "BYTES" {
        let text: Cow<str> = serde_json::from_str(value.get()).ok()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .ok()?;
        if bytes.is_empty() {
            return None;
        }
        let items: Vec<String> = bytes.iter().map(|b| (*b as i8).to_string()).collect();
        out.push_str(&items.join(&ARRAY_DELIMITER.to_string()));
        return Some("byte[]");
    }
    if let Some(element) = kind.strip_prefix("LIST<").and_then(|k| k.strip_suffix('>')) {
        let (csv_type, _) = scalar_type(element)?;
        let items: Vec<&RawValue> = serde_json::from_str(value.get()).ok()?;
        if items.is_empty() {
            return None;
        }
        let mut joined = String::new();
        for (n, item) in items.into_iter().enumerate() {
            if n > 0 {
                joined.push(ARRAY_DELIMITER);
            }
            let start = joined.len();
            scalar(csv_type, item, &mut joined)?;
            let text = &joined[start..];
            if text.is_empty() || text[..].contains(ARRAY_DELIMITER) {
                return None;
            }
        }
        quoted(out, &joined);
        return Some(array_type(csv_type));
    }
    let (csv_type, quote) = scalar_type(kind)?;
    let mut text = String::new();
    scalar(csv_type, value, &mut text)?;
    if quote {
        quoted(out, &text);
    } else {
        out.push_str(&text);
    }
    Some(csv_type)
}

/// A scalar's text (unquoted), or None when it must be fixed up.
fn scalar(csv_type: &str, value: &RawValue, out: &mut String) -> Option<()> {
    let raw = value.get();
    match csv_type {
        "long" => {
            raw.parse::<i64>().ok()?;
            out.push_str(raw);
        }
        "double" => match serde_json::from_str::<Cow<str>>(raw) {
            // Java's Double.parseDouble reads these three words.
            Ok(word) if ["NaN", "Infinity", "-Infinity"].contains(&word.as_ref()) => {
                out.push_str(&word)
            }
            Ok(_) => return None,
            // The JSON number as the export wrote it (shortest round trip):
            // Java reads it to the same double.
            Err(_) => {
                raw.parse::<f64>().ok().filter(|f| f.is_finite())?;
                out.push_str(raw);
            }
        },
        "boolean" => {
            raw.parse::<bool>().ok()?;
            out.push_str(raw);
        }
        "point" => point(raw, out)?,
        _ => {
            let text: Cow<str> = serde_json::from_str(raw).ok()?;
            // A carriage return may be taken for a line end. An empty
            // string is quoted (`""`), which neo4j-admin keeps as an empty
            // string with --ignore-empty-strings=false (the round-trip test
            // holds one); an empty array element is fixed up in `cell`.
            if text.contains('\r') {
                return None;
            }
            out.push_str(&text);
        }
    }
    Some(())
}

/// A stored point `{srid, x, y[, z]}` as neo4j-admin's point text.
fn point(raw: &str, out: &mut String) -> Option<()> {
    let map: HashMap<String, &RawValue> = serde_json::from_str(raw).ok()?;
    let srid: i64 = map.get("srid")?.get().parse().ok()?;
    if map
        .keys()
        .any(|k| !["srid", "x", "y", "z"].contains(&k.as_str()))
    {
        return None;
    }
    out.push_str(&format!("{{srid:{srid}"));
    for axis in ["x", "y", "z"] {
        let Some(value) = map.get(axis) else {
            continue;
        };
        value.get().parse::<f64>().ok().filter(|f| f.is_finite())?;
        out.push_str(&format!(",{axis}:{}", value.get()));
    }
    out.push('}');
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(lines: &[&str]) -> (CsvSet, Vec<String>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = CsvWriter::create(dir.path()).unwrap();
        for line in lines {
            if writer.line(line.as_bytes()).is_err() {
                panic!("refused: {line}");
            }
        }
        let set = writer.finish().unwrap();
        let mut texts: Vec<String> = set
            .node_files
            .iter()
            .chain(&set.relationship_files)
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        texts.push(std::fs::read_to_string(&set.node_fixup_file).unwrap());
        (set, texts, dir)
    }

    #[test]
    fn rows_are_grouped_by_signature_and_typed() {
        let (set, texts, _dir) = written(&[
            r#"{"type":"node","id":"4:x:1","labels":["A","B"],"props":{"n":["INTEGER",-9223372036854775808],"f":["FLOAT","NaN"],"s":["STRING","a \"q\"\nb"]}}"#,
            r#"{"type":"node","id":"4:x:2","labels":[],"props":{"s":["STRING","x"],"n":["INTEGER",1],"f":["FLOAT",1e-300]}}"#,
            r#"{"type":"node","id":"4:x:3","props":{"p":["POINT",{"srid":4979,"x":1.5,"y":2.0,"z":-3.0}],"l":["LIST<STRING>",["a","b"]]}}"#,
            r#"{"type":"rel","id":"5:x:1","rel_type":"R","start":"4:x:1","end":"4:x:2","props":{}}"#,
        ]);
        assert_eq!((set.nodes, set.relationships, set.node_fixups), (3, 1, 0));
        assert_eq!(set.node_files.len(), 2);
        assert_eq!(
            texts[0],
            ":ID,:LABEL,f:double,n:long,s:string\n\"4:x:1\",\"A\u{1f}B\",NaN,-9223372036854775808,\"a \"\"q\"\"\nb\"\n\"4:x:2\",,1e-300,1,\"x\"\n"
        );
        assert_eq!(
            texts[1],
            ":ID,:LABEL,l:string[],p:point\n\"4:x:3\",,\"a\u{1f}b\",\"{srid:4979,x:1.5,y:2.0,z:-3.0}\"\n"
        );
        assert_eq!(
            texts[2],
            ":START_ID,:END_ID,:TYPE\n\"4:x:1\",\"4:x:2\",\"R\"\n"
        );
        assert!(set.multiline);
    }

    #[test]
    fn values_the_csv_cannot_carry_are_left_to_the_fixup() {
        let (set, texts, _dir) = written(&[
            r#"{"type":"node","id":"4:x:1","labels":["A"],"props":{"e":["STRING",""],"l":["LIST<NOTHING>",[]],"b":["BYTES",""],"t":["LIST<STRING>",["a",""]],"odd key":["INTEGER",1],"ok":["BYTES","AP8="],"r":["STRING","a\rb"]}}"#,
        ]);
        assert_eq!(set.node_fixups, 1);
        assert_eq!(
            texts[0],
            format!(":ID,:LABEL,e:string,ok:byte[],{FIX_KEY}:long\n\"4:x:1\",\"A\u{1f}{TEMP_LABEL}\",\"\",0\u{1f}-1,0\n")
        );
        assert_eq!(
            texts[1],
            r#"{"props":{"l":["LIST<NOTHING>",[]],"b":["BYTES",""],"t":["LIST<STRING>",["a",""]],"odd key":["INTEGER",1],"r":["STRING","a\rb"]}}"#.to_string() + "\n"
        );
    }

    #[test]
    fn too_many_shapes_and_the_marker_key_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = CsvWriter::create(dir.path()).unwrap();
        let mut refused = None;
        for n in 0..=MAX_GROUPS {
            let line =
                format!(r#"{{"type":"node","id":"4:x:{n}","props":{{"k{n}":["INTEGER",1]}}}}"#);
            if let Err(CsvError::Unsuitable(Unsuitable(why))) = writer.line(line.as_bytes()) {
                refused = Some((n, why));
            }
        }
        let (n, why) = refused.expect("refused");
        assert_eq!(n, MAX_GROUPS);
        assert!(why.contains("more than 200 shapes"), "{why}");
        let mut writer = CsvWriter::create(dir.path()).unwrap();
        let line =
            format!(r#"{{"type":"node","id":"4:x:1","props":{{"{FIX_KEY}":["INTEGER",1]}}}}"#);
        assert!(matches!(
            writer.line(line.as_bytes()),
            Err(CsvError::Unsuitable(_))
        ));
    }
}
