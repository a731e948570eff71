//! The logical restore's data path: the export's lines, routed into batches
//! by label set or relationship type, each batch created by one
//! `UNWIND $rows …` transaction, several in flight.
//!
//! A batch keeps its lines as the export wrote them (JSON text) and decodes
//! them into Bolt values when it is sent: a retry decodes them again instead
//! of keeping a second copy of every row, and each property goes from JSON
//! text to its Bolt value in one step (no intermediate JSON tree).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use neo4rs::{query, BoltType, Graph};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{neo_error, quote, IdSet, BATCH_BYTES, CHUNK_BYTES, MAX_LINE, SVC};
use crate::error::{io_error, Error, Result};
use crate::manifest::ArtifactRecord;
use crate::stores::neo4j::Neo4j;
use crate::stores::RestoreContext;

/// The stored types Cypher must convert back (temporal values, points), with
/// the function that does it; each also comes as a list (`LIST<DATE>` …).
/// Any other type Bolt cannot carry as stored is refused: converting it
/// would give null, and so silently not restore it.
const SPECIAL_TYPES: [(&str, &str); 7] = [
    ("DATE", "date"),
    ("LOCAL TIME", "localtime"),
    ("ZONED TIME", "time"),
    ("LOCAL DATETIME", "localdatetime"),
    ("ZONED DATETIME", "datetime"),
    ("DURATION", "duration"),
    ("POINT", "point"),
];

/// Whether `kind` is one of [`SPECIAL_TYPES`] or a list of one.
fn is_special(kind: &str) -> bool {
    let element = kind
        .strip_prefix("LIST<")
        .and_then(|k| k.strip_suffix('>'))
        .unwrap_or(kind);
    SPECIAL_TYPES.iter().any(|(special, _)| *special == element)
}

/// Cypher that turns a stored special value `s = [key, type, value]` back into
/// its Neo4j type, made from [`SPECIAL_TYPES`].
fn special_cypher() -> &'static str {
    static CASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CASE.get_or_init(|| {
        let mut case = String::from("CASE s[1]");
        for (kind, function) in SPECIAL_TYPES {
            case.push_str(&format!(" WHEN '{kind}' THEN {function}(s[2])"));
            case.push_str(&format!(
                " WHEN 'LIST<{kind}>' THEN [v IN s[2] | {function}(v)]"
            ));
        }
        case.push_str(" END");
        case
    })
}

impl Neo4j {
    /// Remove everything: data, constraints, indexes (token lookup indexes stay).
    async fn wipe(&self, graph: &Graph) -> Result<()> {
        let step = "wipe database";
        for row in self
            .rows(graph, "SHOW CONSTRAINTS YIELD name RETURN name", step)
            .await?
        {
            let name: String = row.get("name").unwrap_or_default();
            graph
                .run(query(&format!(
                    "DROP CONSTRAINT {} IF EXISTS",
                    quote(&name)
                )))
                .await
                .map_err(|e| neo_error(step, e))?;
        }
        for row in self
            .rows(
                graph,
                "SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP' RETURN name",
                step,
            )
            .await?
        {
            let name: String = row.get("name").unwrap_or_default();
            graph
                .run(query(&format!("DROP INDEX {} IF EXISTS", quote(&name))))
                .await
                .map_err(|e| neo_error(step, e))?;
        }
        graph
            .run(query(
                "MATCH (n) CALL { WITH n DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS",
            ))
            .await
            .map_err(|e| neo_error(step, e))
    }

    /// Replace the user database with the export: wipe it, load the nodes
    /// then the relationships, then create the schema.
    pub(in crate::stores::neo4j) async fn restore_logical(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let graph = self.graph().await?;
        let graph = &graph;
        let relationships = record.counts.get("relationships").copied();
        self.wipe(graph).await?;
        tracing::info!(service = %SVC, "database emptied; restoring nodes");

        let ids = IdMap::create(ctx.scratch)
            .map_err(|e| io_error(Some(SVC), "prepare load", ctx.scratch.display(), e))?;
        let schema = load_graph(
            graph,
            ctx.artifact,
            self.settings
                .group_relationships
                .then_some((ctx.scratch, relationships)),
            ids,
            self.settings.batch_size,
            self.settings.transactions,
        )
        .await?;

        // Schema after the data: building an index once is faster than maintaining it per row.
        tracing::info!(service = %SVC, "data restored; restoring constraints and indexes");
        let step = "restore schema";
        for statement in &schema {
            if let Err(e) = graph.run(query(statement)).await {
                let text = e.to_string();
                // A token lookup index that survived the wipe is already there.
                if !(text.contains("already exists") || text.contains("equivalent")) {
                    return Err(neo_error(step, e).hint(format!("while running: {statement}")));
                }
            }
        }
        graph
            .run(query("CALL db.awaitIndexes(3600)"))
            .await
            .map_err(|e| neo_error(step, e))?;
        Ok(())
    }
}

/// One line of the logical format, as the restore and the verification read
/// it: names borrowed from the line, properties decoded as `P` (skipped with
/// `IgnoredAny`, checked and converted with [`TypedProps`]).
#[derive(Deserialize)]
pub(super) struct Record<'a, P> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    #[serde(default, borrow)]
    pub rel_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub start: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub end: Option<Cow<'a, str>>,
    #[serde(default)]
    pub statement: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub nodes: Option<u64>,
    #[serde(default)]
    pub relationships: Option<u64>,
    /// Decoded to check it (verification) or skipped (routing); a batch
    /// decodes its lines' properties again when it is sent.
    #[serde(default)]
    #[allow(dead_code)]
    pub props: Option<P>,
}

/// A line that the verification read but the restore cannot.
fn undecodable(e: serde_json::Error) -> Error {
    Error::damaged(
        "restore",
        format!("a line of the export does not decode: {e}"),
    )
    .service(SVC)
    .hint("the artifact is damaged; use another backup")
}

/// Only a line's properties (the rest of the line is skipped).
#[derive(Deserialize)]
struct PropsOf {
    #[serde(default)]
    props: Option<TypedProps>,
}

/// Stored properties `{key: [TYPE, value]}` as Bolt: the values Bolt can carry
/// as they are, and `[key, TYPE, value]` for those Cypher must convert
/// (temporal values, points; see [`SPECIAL_TYPES`]).
#[derive(Default)]
pub(super) struct TypedProps {
    direct: neo4rs::BoltMap,
    special: Vec<BoltType>,
}

/// The scalar property types that Bolt carries as they are stored.
#[derive(Clone, Copy)]
enum Scalar {
    Integer,
    Float,
    String,
    Boolean,
    Bytes,
}

impl Scalar {
    fn of(kind: &str) -> Option<Scalar> {
        Some(match kind {
            "INTEGER" => Scalar::Integer,
            "FLOAT" => Scalar::Float,
            "STRING" => Scalar::String,
            "BOOLEAN" => Scalar::Boolean,
            "BYTES" => Scalar::Bytes,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for TypedProps {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_map(PropsVisitor)
    }
}

struct PropsVisitor;

impl<'de> Visitor<'de> for PropsVisitor {
    type Value = TypedProps;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of property name to [type, value]")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<TypedProps, A::Error> {
        let mut props = TypedProps {
            direct: neo4rs::BoltMap::with_capacity(map.size_hint().unwrap_or(8)),
            special: Vec::new(),
        };
        while let Some(key) = map.next_key::<String>()? {
            match map.next_value_seed(TypedSeed)? {
                Typed::Direct(value) => props.direct.put(key.into(), value),
                Typed::Special(kind, value) => {
                    props
                        .special
                        .push(BoltType::List(neo4rs::BoltList::from(vec![
                            BoltType::from(key),
                            BoltType::from(kind),
                            json_to_bolt(&value),
                        ])))
                }
            }
        }
        Ok(props)
    }
}

enum Typed {
    Direct(BoltType),
    Special(String, Value),
}

/// `[TYPE, value]`: the type read first decides how the value is read.
struct TypedSeed;

impl<'de> DeserializeSeed<'de> for TypedSeed {
    type Value = Typed;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Typed, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for TypedSeed {
    type Value = Typed;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("[type, value]")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Typed, A::Error> {
        let kind: Cow<'de, str> = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let list_of = kind
            .strip_prefix("LIST<")
            .and_then(|k| k.strip_suffix('>'))
            .and_then(Scalar::of);
        let typed = if let Some(scalar) = Scalar::of(&kind) {
            seq.next_element_seed(ScalarSeed(scalar))?
                .map(Typed::Direct)
        } else if let Some(scalar) = list_of {
            seq.next_element_seed(ListSeed(scalar))?.map(Typed::Direct)
        } else if kind == "LIST<NOTHING>" {
            // An empty list: Cypher cannot tell what it was to hold.
            seq.next_element_seed(ListSeed(Scalar::String))?
                .map(Typed::Direct)
        } else if is_special(&kind) {
            seq.next_element::<Value>()?
                .map(|value| Typed::Special(kind.into_owned(), value))
        } else {
            return Err(de::Error::custom(format!("unknown property type '{kind}'")));
        };
        let typed = typed.ok_or_else(|| de::Error::invalid_length(1, &self))?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(3, &self));
        }
        Ok(typed)
    }
}

/// One stored scalar: integers exact, floats also as "NaN"/"Infinity"/"-Infinity",
/// byte arrays in base64.
struct ScalarSeed(Scalar);

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = BoltType;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<BoltType, D::Error> {
        Ok(match self.0 {
            Scalar::Integer => BoltType::from(i64::deserialize(d)?),
            Scalar::Float => BoltType::from(d.deserialize_any(FloatVisitor)?),
            Scalar::String => BoltType::from(String::deserialize(d)?),
            Scalar::Boolean => BoltType::from(bool::deserialize(d)?),
            Scalar::Bytes => {
                let text: Cow<'de, str> = Deserialize::deserialize(d)?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| de::Error::custom(format!("bytes not in base64: {e}")))?;
                BoltType::Bytes(neo4rs::BoltBytes::new(bytes::Bytes::from(bytes)))
            }
        })
    }
}

struct FloatVisitor;

impl Visitor<'_> for FloatVisitor {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, \"NaN\", \"Infinity\" or \"-Infinity\"")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<f64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<f64, E> {
        match v {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }
}

/// A list of one scalar type.
struct ListSeed(Scalar);

impl<'de> DeserializeSeed<'de> for ListSeed {
    type Value = BoltType;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<BoltType, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed {
    type Value = BoltType;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<BoltType, A::Error> {
        let mut items = neo4rs::BoltList::with_capacity(seq.size_hint().unwrap_or(4));
        while let Some(item) = seq.next_element_seed(ScalarSeed(self.0))? {
            items.push(item);
        }
        Ok(BoltType::List(items))
    }
}

/// A JSON value (point maps, temporal strings, their lists) as Bolt.
fn json_to_bolt(value: &Value) -> BoltType {
    match value {
        Value::Null => BoltType::Null(neo4rs::BoltNull),
        Value::Bool(b) => BoltType::from(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => BoltType::from(i),
            None => BoltType::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => BoltType::from(s.clone()),
        Value::Array(items) => BoltType::List(neo4rs::BoltList::from(
            items.iter().map(json_to_bolt).collect::<Vec<_>>(),
        )),
        Value::Object(map) => {
            let mut out = neo4rs::BoltMap::new();
            for (k, v) in map {
                out.put(k.as_str().into(), json_to_bolt(v));
            }
            BoltType::Map(out)
        }
    }
}

/// Exported node id → id of the node the restore created for it. Relationships
/// find their endpoints by that id (a direct lookup), so the restore needs no
/// temporary label, property or index, and no clean-up pass over every node.
///
/// Element ids end in a dense integer, which indexes the map: the first
/// `NEAR_SLOTS` in memory (4 bytes each, 16 MB at most), the rest in a file of
/// 8-byte slots that the operating system caches. A slot holds new id + 1, so
/// a hole reads as 0, "absent". Memory stays bounded whatever the graph's size.
pub(super) struct IdMap {
    near: Vec<u32>,
    far: std::fs::File,
    far_used: bool,
    other: HashMap<String, i64>,
}

const NEAR_SLOTS: usize = 1 << 22;
/// Ids beyond this (never seen in practice) go to the hash map.
const MAX_SLOT: usize = 1 << 36;

impl IdMap {
    pub fn create(scratch: &Path) -> std::io::Result<IdMap> {
        Ok(IdMap {
            near: Vec::new(),
            far: tempfile::tempfile_in(scratch)?,
            far_used: false,
            other: HashMap::new(),
        })
    }

    fn insert(&mut self, old: &str, new: i64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let n = match IdSet::numeric(old) {
            Some(n) if n < MAX_SLOT => n,
            _ => {
                self.other.insert(old.to_string(), new);
                return Ok(());
            }
        };
        match u32::try_from(new + 1) {
            Ok(slot) if n < NEAR_SLOTS && slot != u32::MAX => {
                if n >= self.near.len() {
                    // Grow by powers of two, never past NEAR_SLOTS.
                    let len = (n + 1).next_power_of_two().min(NEAR_SLOTS);
                    self.near.reserve_exact(len - self.near.len());
                    self.near.resize(len, 0);
                }
                self.near[n] = slot;
                Ok(())
            }
            _ => {
                self.far_used = true;
                self.far
                    .write_all_at(&(new + 1).to_le_bytes(), n as u64 * 8)
            }
        }
    }

    fn get(&self, old: &str) -> std::io::Result<Option<i64>> {
        use std::os::unix::fs::FileExt;
        let n = match IdSet::numeric(old) {
            Some(n) if n < MAX_SLOT => n,
            _ => return Ok(self.other.get(old).copied()),
        };
        if let Some(&slot) = self.near.get(n).filter(|s| **s != 0) {
            return Ok(Some(i64::from(slot) - 1));
        }
        if !self.far_used {
            return Ok(None);
        }
        let mut slot = [0u8; 8];
        match self.far.read_exact_at(&mut slot, n as u64 * 8) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let stored = i64::from_le_bytes(slot);
        Ok((stored != 0).then(|| stored - 1))
    }
}

/// What a batch creates.
enum Target {
    /// Nodes with these labels (sorted).
    Nodes(Vec<String>),
    /// Relationships of this type.
    Relationships(String),
}

/// Rows waiting to be sent: the lines as exported, plus what the line alone
/// does not say.
#[derive(Default)]
struct Batch {
    /// The lines, each followed by a newline.
    text: Vec<u8>,
    rows: usize,
    /// Nodes: the exported ids, in row order (paired with the new ids answered).
    olds: Vec<String>,
    /// Relationships: the endpoints' new ids, in row order.
    ends: Vec<[i64; 2]>,
}

impl Batch {
    /// Whether `line` would take the batch over [`BATCH_BYTES`]: the
    /// batch is sent first, so a transaction's rows stay within the bound
    /// (or are one line, at most [`MAX_LINE`]).
    fn overflows(&self, line: &[u8]) -> bool {
        self.rows > 0 && self.text.len() + line.len() + 1 > BATCH_BYTES
    }

    fn push(&mut self, line: &[u8]) {
        self.text.extend_from_slice(line);
        self.text.push(b'\n');
        self.rows += 1;
    }

    /// The `$rows` parameter: `[place, props(, special)]` per node,
    /// `[start, end, props(, special)]` per relationship; and whether any row
    /// has special values (only then do the rows carry them, and the Cypher
    /// convert them).
    fn rows(&self, target: &Target) -> Result<(BoltType, bool)> {
        let mut decoded = Vec::with_capacity(self.rows);
        for line in self.text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let props = serde_json::from_slice::<PropsOf>(line).map_err(undecodable)?;
            decoded.push(props.props.unwrap_or_default());
        }
        let special = decoded.iter().any(|p| !p.special.is_empty());
        let mut rows = neo4rs::BoltList::with_capacity(decoded.len());
        for (place, props) in decoded.into_iter().enumerate() {
            let mut row = Vec::with_capacity(4);
            match target {
                Target::Nodes(_) => row.push(BoltType::from(place as i64)),
                Target::Relationships(_) => {
                    let [start, end] = self.ends[place];
                    row.push(BoltType::from(start));
                    row.push(BoltType::from(end));
                }
            }
            row.push(BoltType::Map(props.direct));
            if special {
                row.push(BoltType::List(neo4rs::BoltList::from(props.special)));
            }
            rows.push(BoltType::List(neo4rs::BoltList::from(row)));
        }
        Ok((BoltType::List(rows), special))
    }
}

impl Target {
    /// Nodes answer each one's new id by its place in the batch (the old ids
    /// stay here: nothing long travels back). `id()` is deprecated in favour
    /// of element ids, but an integer is what lets a relationship find its
    /// endpoint by direct lookup and keeps the map small.
    fn cypher(&self, special: bool) -> String {
        let convert = |var: &str, at: usize| {
            if special {
                format!(
                    " FOREACH (s IN row[{at}] | SET {var}[s[0]] = {})",
                    special_cypher()
                )
            } else {
                String::new()
            }
        };
        match self {
            Target::Nodes(labels) => {
                let labels: String = labels.iter().map(|l| format!(":{}", quote(l))).collect();
                format!(
                    "UNWIND $rows AS row CREATE (n{labels}) SET n += row[1]{} RETURN collect(row[0]) AS i, collect(id(n)) AS new",
                    convert("n", 2)
                )
            }
            Target::Relationships(rel_type) => format!(
                "UNWIND $rows AS row MATCH (a) WHERE id(a) = row[0] MATCH (b) WHERE id(b) = row[1] \
                 CREATE (a)-[r:{}]->(b) SET r += row[2]{}",
                quote(rel_type),
                convert("r", 3)
            ),
        }
    }
}

/// Load the nodes and relationships of the export at `path` into the (empty)
/// database; answers the schema statements, which the caller runs after the
/// data (building an index once is faster than maintaining it per row).
/// Nodes go in export order; relationships after every node, grouped by start
/// node (see `spill`) when `spill_to` names a scratch directory (and the
/// manifest's relationship count), where a second reader prepares them
/// meanwhile; in export order otherwise.
pub(super) async fn load_graph(
    graph: &Graph,
    path: &Path,
    spill_to: Option<(&Path, Option<u64>)>,
    ids: IdMap,
    batch_size: usize,
    transactions: usize,
) -> Result<Vec<String>> {
    let spiller = spill_to.map(|(scratch, relationships)| {
        let (from, to) = (path.to_path_buf(), scratch.to_path_buf());
        tokio::task::spawn_blocking(move || super::spill::spill(&from, &to, relationships))
    });
    let mut loader = Loader::new(graph.clone(), batch_size, transactions, ids);
    let mut schema = Vec::new();
    let nodes = route_all(&mut loader, &mut schema, artifact_chunks(path)).await;
    let nodes = match nodes {
        Ok(()) => loader.drain().await,
        Err(e) => Err(e),
    };
    // Waited for even after a failure: its scratch files close with it.
    let spilled = match spiller {
        Some(spiller) => Some(
            spiller
                .await
                .map_err(|e| Error::failure("sort relationships", e.to_string()).service(SVC))
                .and_then(|spilled| spilled),
        ),
        None => None,
    };
    nodes?;
    loader.in_relationships = true;
    match spilled {
        Some(Ok(spilled)) => {
            tracing::info!(
                service = %SVC,
                relationships = spilled.relationships,
                "nodes restored; restoring relationships, grouped by start node"
            );
            route_all(&mut loader, &mut schema, move |sink| {
                spilled.read_sorted(CHUNK_BYTES, sink)
            })
            .await?;
        }
        not_grouped => {
            if let Some(Err(e)) = not_grouped {
                // The grouping only makes the load faster: without room for
                // it (a full scratch disk, say), load in export order rather
                // than fail half-way.
                tracing::warn!(
                    service = %SVC,
                    "could not group the relationships by start node ({e}); restoring them in export order"
                );
            } else {
                tracing::info!(service = %SVC, "nodes restored; restoring relationships in export order");
            }
            route_all(&mut loader, &mut schema, artifact_chunks(path)).await?;
        }
    }
    loader.drain().await?;
    Ok(schema)
}

/// The artifact's lines in chunks, for [`route_all`].
fn artifact_chunks(path: &Path) -> impl FnOnce(&mut dyn FnMut(Result<Vec<u8>>) -> bool) + Send {
    let path = path.to_path_buf();
    move |sink| crate::ndjson::read_chunks(&path, SVC, CHUNK_BYTES, MAX_LINE, sink)
}

/// Route every line that `produce` (run on a blocking thread) hands over in
/// chunks of whole lines.
async fn route_all<P>(loader: &mut Loader, schema: &mut Vec<String>, produce: P) -> Result<()>
where
    P: FnOnce(&mut dyn FnMut(Result<Vec<u8>>) -> bool) + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>>>(8);
    let reader =
        tokio::task::spawn_blocking(move || produce(&mut |chunk| tx.blocking_send(chunk).is_ok()));
    let mut outcome = Ok(());
    'chunks: while let Some(chunk) = rx.recv().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        for line in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Err(e) = loader.route(line, schema).await {
                outcome = Err(e);
                break 'chunks;
            }
        }
    }
    drop(rx);
    let _ = reader.await;
    outcome
}

/// Routes lines into batches by label set and relationship type and runs
/// full batches as `UNWIND` transactions, several in flight.
struct Loader {
    graph: Graph,
    batch_size: usize,
    max_in_flight: usize,
    in_flight: tokio::task::JoinSet<Result<Vec<(String, i64)>>>,
    /// Batches being filled, by label set (sorted) and by relationship type.
    pending_nodes: HashMap<Vec<String>, Batch>,
    pending_rels: HashMap<String, Batch>,
    ids: IdMap,
    /// Every node is in: relationship lines are loaded, the others skipped
    /// (before: the other way round).
    in_relationships: bool,
}

impl Loader {
    fn new(graph: Graph, batch_size: usize, max_in_flight: usize, ids: IdMap) -> Self {
        Loader {
            graph,
            batch_size: batch_size.max(1),
            max_in_flight: max_in_flight.max(1),
            in_flight: tokio::task::JoinSet::new(),
            pending_nodes: HashMap::new(),
            pending_rels: HashMap::new(),
            ids,
            in_relationships: false,
        }
    }

    /// Put one line into its batch. Relationship lines are taken only once
    /// every node is in (`in_relationships`); before that they are skipped,
    /// the spilled copy being the one loaded.
    async fn route(&mut self, line: &[u8], schema: &mut Vec<String>) -> Result<()> {
        if !self.in_relationships && line.starts_with(br#"{"type":"rel","#) {
            return Ok(());
        }
        let record: Record<IgnoredAny> = serde_json::from_slice(line).map_err(undecodable)?;
        match record.kind.as_ref() {
            // Nodes and schema are taken in the first pass only.
            "constraint" | "index" if !self.in_relationships => schema.extend(record.statement),
            "node" if !self.in_relationships => {
                let mut labels = record.labels.unwrap_or_default();
                labels.sort();
                let old = record.id.map(Cow::into_owned).unwrap_or_default();
                let batch = batch_for(&mut self.pending_nodes, labels.as_slice());
                if batch.overflows(line) {
                    let batch = std::mem::take(batch);
                    self.spawn(Target::Nodes(labels.clone()), batch).await?;
                }
                let batch = batch_for(&mut self.pending_nodes, labels.as_slice());
                batch.push(line);
                batch.olds.push(old);
                if batch.rows >= self.batch_size || batch.text.len() >= BATCH_BYTES {
                    let batch = std::mem::take(batch);
                    self.spawn(Target::Nodes(labels), batch).await?;
                }
            }
            "rel" if self.in_relationships => {
                let ends = [
                    self.new_id(record.start.as_deref())?,
                    self.new_id(record.end.as_deref())?,
                ];
                let rel_type = record.rel_type.as_deref().unwrap_or_default();
                let batch = batch_for(&mut self.pending_rels, rel_type);
                if batch.overflows(line) {
                    let batch = std::mem::take(batch);
                    self.spawn(Target::Relationships(rel_type.to_string()), batch)
                        .await?;
                }
                let batch = batch_for(&mut self.pending_rels, rel_type);
                batch.push(line);
                batch.ends.push(ends);
                if batch.rows >= self.batch_size || batch.text.len() >= BATCH_BYTES {
                    let batch = std::mem::take(batch);
                    self.spawn(Target::Relationships(rel_type.to_string()), batch)
                        .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn new_id(&self, old: Option<&str>) -> Result<i64> {
        let old = old.unwrap_or_default();
        let found = self
            .ids
            .get(old)
            .map_err(|e| io_error(Some(SVC), "restore relationships", "the id map", e))?;
        found.ok_or_else(|| {
            Error::damaged(
                "restore relationships",
                format!("a relationship points to node {old}, which the export does not hold"),
            )
            .service(SVC)
            .hint("the artifact is damaged; use another backup")
        })
    }

    /// Run a batch in the background; a node batch answers (old id, new id) pairs.
    async fn spawn(&mut self, target: Target, mut batch: Batch) -> Result<()> {
        while self.in_flight.len() >= self.max_in_flight {
            self.join_one().await?;
        }
        let graph = self.graph.clone();
        self.in_flight.spawn(async move {
            let created = run_batch(&graph, &target, &batch).await?;
            created
                .into_iter()
                .map(|(place, new)| {
                    let old = usize::try_from(place)
                        .ok()
                        .and_then(|p| batch.olds.get_mut(p));
                    old.map(|old| (std::mem::take(old), new)).ok_or_else(|| {
                        Error::failure("restore nodes", "Neo4j answered a row that was not sent")
                            .service(SVC)
                    })
                })
                .collect()
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        match self.in_flight.join_next().await {
            Some(Ok(result)) => {
                for (old, new) in result? {
                    self.ids
                        .insert(&old, new)
                        .map_err(|e| io_error(Some(SVC), "restore nodes", "the id map", e))?;
                }
                Ok(())
            }
            Some(Err(e)) => Err(Error::failure("restore", e.to_string()).service(SVC)),
            None => Ok(()),
        }
    }

    /// Send every pending batch and wait for all of them.
    async fn drain(&mut self) -> Result<()> {
        let nodes = self
            .pending_nodes
            .drain()
            .map(|(k, b)| (Target::Nodes(k), b));
        let rels = self
            .pending_rels
            .drain()
            .map(|(k, b)| (Target::Relationships(k), b));
        let pending: Vec<_> = nodes.chain(rels).collect();
        for (target, batch) in pending {
            if batch.rows > 0 {
                self.spawn(target, batch).await?;
            }
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }
}

/// The batch being filled for `key`; the key is copied only when it is new
/// (a lookup per line, an allocation per label set or type).
fn batch_for<'m, K, Q>(pending: &'m mut HashMap<K, Batch>, key: &Q) -> &'m mut Batch
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: ToOwned<Owned = K> + std::hash::Hash + Eq + ?Sized,
{
    if !pending.contains_key(key) {
        pending.insert(key.to_owned(), Batch::default());
    }
    pending.get_mut(key).expect("inserted above")
}

/// One batch in its own transaction, retried when Neo4j reports a transient
/// failure (a deadlock between concurrent batches, say). Answers the
/// `(place in the batch, new id)` pairs a node batch returns (none for
/// relationships).
async fn run_batch(graph: &Graph, target: &Target, batch: &Batch) -> Result<Vec<(i64, i64)>> {
    let step = "restore batch";
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=8 {
        // Decoded per attempt: the first attempt's rows went to the server.
        let (rows, special) = batch.rows(target)?;
        match batch_once(graph, &target.cypher(special), rows).await {
            Ok(ids) => return Ok(ids),
            Err(e) if attempt < 8 && transient(&e) => {
                tracing::debug!(service = %SVC, attempt, error = %e, "batch failed transiently, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(neo_error(step, e)),
        }
    }
    Err(Error::failure(step, "gave up after repeated transient failures").service(SVC))
}

/// Whether Neo4j called the failure transient (worth retrying): typed when
/// it answered the query itself; neo4rs 0.8 reports a failure met later
/// (PULL, COMMIT) as an unexpected message quoting the server's code.
fn transient(err: &neo4rs::Error) -> bool {
    match err {
        neo4rs::Error::Neo4j(e) => e.kind() == neo4rs::Neo4jErrorKind::Transient,
        neo4rs::Error::UnexpectedMessage(said) => said.contains("Neo.TransientError"),
        _ => false,
    }
}

async fn batch_once(
    graph: &Graph,
    cypher: &str,
    rows: BoltType,
) -> std::result::Result<Vec<(i64, i64)>, neo4rs::Error> {
    let mut txn = graph.start_txn().await?;
    let mut stream = txn.execute(query(cypher).param("rows", rows)).await?;
    let mut ids = Vec::new();
    while let Some(row) = stream.next(txn.handle()).await? {
        // Both are never negative, so neo4rs 0.8's misreading of the tiny
        // integers -16..-1 cannot touch them.
        // One answer per batch, two lists aligned by the aggregation (not a
        // record per row: 1M records cost the server and the client more).
        if let (Ok(places), Ok(news)) = (row.get::<Vec<i64>>("i"), row.get::<Vec<i64>>("new")) {
            ids.extend(places.into_iter().zip(news));
        }
    }
    txn.commit().await?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_types_and_their_lists_are_converted_and_nothing_else() {
        for kind in ["DATE", "ZONED TIME", "LIST<POINT>", "LIST<DURATION>"] {
            assert!(is_special(kind), "{kind}");
        }
        for kind in ["MYSTERY", "LIST<MYSTERY>", "STRING", "LIST<>"] {
            assert!(!is_special(kind), "{kind}");
        }
        let case = special_cypher();
        assert!(
            case.starts_with("CASE s[1] ") && case.ends_with(" END"),
            "{case}"
        );
        assert!(
            case.contains(" WHEN 'ZONED TIME' THEN time(s[2])"),
            "{case}"
        );
        assert!(
            case.contains(" WHEN 'LIST<ZONED TIME>' THEN [v IN s[2] | time(v)]"),
            "{case}"
        );
        assert_eq!(case.matches(" WHEN ").count(), 2 * SPECIAL_TYPES.len());
    }

    fn decode(line: &str) -> TypedProps {
        serde_json::from_str::<PropsOf>(line)
            .unwrap()
            .props
            .unwrap_or_default()
    }

    #[test]
    fn stored_values_decode_to_bolt() {
        let props = decode(
            r#"{"type":"node","props":{"big":["INTEGER",9007199254740993],"nan":["FLOAT","NaN"],
            "inf":["FLOAT","-Infinity"],"f":["FLOAT",2],"b":["BYTES","AAEC/w=="],"l":["LIST<INTEGER>",[1,-2]],
            "s":["STRING","x\"y"],"t":["BOOLEAN",true],"z":["ZONED DATETIME","2024-01-01T00:00Z[Europe/Paris]"],
            "e":["LIST<NOTHING>",[]]}}"#,
        );
        assert_eq!(props.direct.len(), 9);
        assert!(props.direct.get::<Vec<String>>("e").unwrap().is_empty());
        assert_eq!(props.direct.get::<i64>("big").unwrap(), 9007199254740993);
        assert!(props.direct.get::<f64>("nan").unwrap().is_nan());
        assert_eq!(props.direct.get::<f64>("f").unwrap(), 2.0);
        assert_eq!(props.direct.get::<Vec<i64>>("l").unwrap(), vec![1, -2]);
        assert_eq!(props.direct.get::<String>("s").unwrap(), "x\"y");
        assert_eq!(props.special.len(), 1);
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            r#"{"props":{"a":["INTEGER","12"]}}"#,
            r#"{"props":{"a":["INTEGER"]}}"#,
            r#"{"props":{"a":["FLOAT","many"]}}"#,
            r#"{"props":{"a":["BYTES","not base64!"]}}"#,
            r#"{"props":{"a":["STRING","x",3]}}"#,
            r#"{"props":{"a":[7,"x"]}}"#,
            r#"{"props":{"a":["MYSTERY","x"]}}"#,
        ] {
            assert!(serde_json::from_str::<PropsOf>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn id_map_holds_near_far_and_other_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = IdMap::create(dir.path()).unwrap();
        map.insert("4:db:7", 0).unwrap();
        map.insert("4:db:9", i64::from(u32::MAX) + 5).unwrap();
        map.insert(&format!("4:db:{}", NEAR_SLOTS + 3), 42).unwrap();
        map.insert("odd", 5).unwrap();
        assert_eq!(map.get("4:db:7").unwrap(), Some(0));
        assert_eq!(map.get("4:db:9").unwrap(), Some(i64::from(u32::MAX) + 5));
        assert_eq!(
            map.get(&format!("4:db:{}", NEAR_SLOTS + 3)).unwrap(),
            Some(42)
        );
        assert_eq!(map.get("odd").unwrap(), Some(5));
        assert_eq!(map.get("4:db:8").unwrap(), None);
        assert_eq!(map.get(&format!("4:db:{}", NEAR_SLOTS * 4)).unwrap(), None);
    }
}
