//! Neo4j, two ways.
//!
//! * **logical** (default): an online export over Bolt — schema, every node
//!   with its labels and properties, every relationship — streamed to
//!   zstd-compressed NDJSON (format in `docs/neo4j-logical.md`), with no
//!   downtime. Neo4j Community has no online backup; this closes that gap.
//!   Property values are exported losslessly: integers as 64-bit integers,
//!   floats including NaN and ±∞, byte arrays, every temporal type (as the
//!   ISO strings Neo4j itself prints and parses), points with their CRS.
//!   Restore replaces the database: it wipes it, loads nodes in batches
//!   (`UNWIND $rows …`, several transactions in flight) while recording each
//!   exported id's new internal id in a scratch-file map, creates the
//!   relationships by direct lookup of those ids, then creates the schema.
//! * **dump**: `neo4j-admin database dump/load` (the runbook's `.dump`), with
//!   the server stopped around it.
//!
//! Reads are read-committed, so writes during an export can yield a
//! relationship whose endpoint was not exported: the endpoint is then fetched
//! and exported before it, and a relationship whose endpoint no longer exists
//! is left out. Either way the restore never fails on it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use async_trait::async_trait;
use neo4rs::{query, Graph};
use serde::Serialize;
use serde_json::json;

use super::{BackupContext, RestoreContext, ServerInfo, Store, StoreBackup};
use crate::artifact::{self, ExportSender, PendingArtifact};
use crate::error::{io_error, Error, Kind, Result};
use crate::lock::StoppedServer;
use crate::manifest::ArtifactRecord;
use crate::process::mask_userinfo;
use crate::service::Service;
use crate::target::Target;
use settings::Neo4jSettings;

mod drill;
mod dump;
mod load;
mod props_json;
mod server;
pub mod settings;
mod spill;

const SVC: Service = Service::Neo4j;
const LOGICAL_FORMAT: &str = "itbackup-neo4j-ndjson";
const LOGICAL_VERSION: u32 = 1;
/// Temporary label and index of earlier versions' restores: never counted or exported.
const TEMP_LABEL: &str = "__ItbRestore";
const TEMP_INDEX: &str = "itbackup_restore_id";
/// Lines are sent to the writer in chunks of about this size.
const CHUNK_BYTES: usize = 256 * 1024;
/// The longest line of the logical format (one node or relationship with its
/// properties). The restore sends a line as one row of one transaction, which
/// Neo4j holds several times over in its transaction memory (a 100 MB line
/// failed with MemoryPoolOutOfMemoryError). The export refuses a longer
/// line, the verification and the load's readers refuse it too.
pub(super) const MAX_LINE: usize = 32 << 20;
/// A batch is sent once its lines reach this many bytes (or `batch_size`
/// rows): a transaction's rows stay about this size, whatever the rows.
pub(super) const BATCH_BYTES: usize = 8 << 20;

/// Properties as Cypher sees them, with temporal values and points turned into
/// the forms we store: `[[key, valueType, value], …]`. Integers travel as
/// text: neo4rs 0.8 decodes the Bolt tiny integers -16..-1 as 240..255
/// (neo4rs issue #164), which would silently corrupt data. Cypher calls a byte
/// array LIST<INTEGER> too, so those lists come as `{raw, text}`: the raw Bolt
/// value tells bytes from integers. Each value's type is computed once and the
/// common scalar types are tested first: the projection is per property of
/// every node and relationship, and this cut its server cost threefold.
const PROPS: &str = "[p IN [k IN keys(x) | [k, valueType(x[k]), x[k]]] | [p[0], p[1], CASE
      WHEN p[1] IN ['STRING NOT NULL', 'FLOAT NOT NULL', 'BOOLEAN NOT NULL'] THEN p[2]
      WHEN p[1] STARTS WITH 'INTEGER' THEN toString(p[2])
      WHEN p[1] STARTS WITH 'LIST<INTEGER' THEN {raw: p[2], text: [i IN p[2] | toString(i)]}
      WHEN p[1] STARTS WITH 'POINT' THEN CASE WHEN p[2].crs ENDS WITH '-3d'
        THEN {srid: p[2].srid, x: p[2].x, y: p[2].y, z: p[2].z} ELSE {srid: p[2].srid, x: p[2].x, y: p[2].y} END
      WHEN p[1] STARTS WITH 'LIST<POINT' THEN [q IN p[2] | CASE WHEN q.crs ENDS WITH '-3d'
        THEN {srid: q.srid, x: q.x, y: q.y, z: q.z} ELSE {srid: q.srid, x: q.x, y: q.y} END]
      WHEN p[1] STARTS WITH 'LIST<DATE' OR p[1] STARTS WITH 'LIST<LOCAL'
        OR p[1] STARTS WITH 'LIST<ZONED' OR p[1] STARTS WITH 'LIST<DURATION'
        THEN [t IN p[2] | toString(t)]
      WHEN p[1] STARTS WITH 'DATE' OR p[1] STARTS WITH 'LOCAL'
        OR p[1] STARTS WITH 'ZONED' OR p[1] STARTS WITH 'DURATION'
        THEN toString(p[2])
      ELSE p[2] END]]";

/// How a Neo4j backup is taken: the `method` (and `format`) of its manifest
/// record, and the `--neo4j-method` / `[neo4j] method` setting.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Neo4jMethod {
    /// `logical`: an online export over Bolt, as NDJSON.
    Logical,
    /// `dump`: `neo4j-admin database dump`, with the server stopped.
    Dump,
}

impl Neo4jMethod {
    pub const ALL: [Neo4jMethod; 2] = [Neo4jMethod::Logical, Neo4jMethod::Dump];

    /// The name the manifest records for an artifact of this method.
    pub fn manifest_name(self) -> &'static str {
        match self {
            Neo4jMethod::Logical => "logical",
            Neo4jMethod::Dump => "neo4j-admin-dump",
        }
    }

    /// The `format` the manifest records for an artifact of this method.
    pub fn manifest_format(self) -> &'static str {
        match self {
            Neo4jMethod::Logical => "ndjson.zst",
            Neo4jMethod::Dump => "neo4j-dump",
        }
    }

    /// The method of an artifact, from its manifest record: the one place
    /// where a method's name is read. Everything after it matches on the enum.
    pub fn of(record: &ArtifactRecord) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|method| method.manifest_name() == record.method)
            .ok_or_else(|| {
                Error::failure(
                    "verify",
                    format!("unknown Neo4j method '{}'", record.method),
                )
                .service(SVC)
            })
    }
}

pub struct Neo4j {
    settings: Neo4jSettings,
    target: Target,
}

/// A header, schema or end line of the logical format. Node and relationship
/// lines are written by [`Entity::write`]; every line is read as
/// [`load::Record`].
#[derive(Debug, Default, Serialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    statement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relationships: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
}

impl Line {
    fn new(kind: &str) -> Self {
        Line {
            kind: kind.into(),
            ..Default::default()
        }
    }
}

/// Exported node ids, compact: element ids end in a dense integer.
#[derive(Default)]
struct IdSet {
    bits: Vec<u64>,
    other: HashSet<String>,
}

impl IdSet {
    fn numeric(id: &str) -> Option<usize> {
        id.rsplit(':').next()?.parse().ok()
    }
    fn insert(&mut self, id: &str) {
        match Self::numeric(id) {
            Some(n) if n < (1 << 36) => {
                let word = n / 64;
                if word >= self.bits.len() {
                    self.bits.resize(word + 1, 0);
                }
                self.bits[word] |= 1 << (n % 64);
            }
            _ => {
                self.other.insert(id.to_string());
            }
        }
    }
    fn contains(&self, id: &str) -> bool {
        match Self::numeric(id) {
            Some(n) if n < (1 << 36) => self
                .bits
                .get(n / 64)
                .is_some_and(|w| w & (1 << (n % 64)) != 0),
            _ => self.other.contains(id),
        }
    }
}

fn neo_error(step: &str, err: neo4rs::Error) -> Error {
    let text = mask_userinfo(&err.to_string());
    let e = Error::failure(step, text.clone()).service(SVC);
    use neo4rs::{Neo4jClientErrorKind::Security, Neo4jErrorKind::Client, Neo4jSecurityErrorKind};
    let refused = matches!(&err, neo4rs::Error::Neo4j(n) if n.kind() == Client(Security(Neo4jSecurityErrorKind::Authentication)));
    match err {
        neo4rs::Error::AuthenticationError(_) => e.of_kind(Kind::Authentication).hint("Neo4j refused the credentials: check NEO4J_USER and NEO4J_PASSWORD (default test12345)"),
        neo4rs::Error::ConnectionError | neo4rs::Error::IOError { .. } | neo4rs::Error::UrlParseError(_) => {
            e.of_kind(Kind::Unreachable).hint("is Neo4j running and reachable? check `docker compose ps` and NEO4J_URI (default bolt://localhost:7687)")
        }
        // neo4rs 0.8 types a security failure only when it answers a query;
        // one met later (BEGIN, PULL, COMMIT) comes as an unexpected message
        // that quotes the server's code: read here, where the error is made.
        _ if refused || text.contains("authentication") || text.contains("Unauthorized") => {
            e.of_kind(Kind::Authentication).hint("Neo4j refused the credentials: check NEO4J_USER and NEO4J_PASSWORD (default test12345)")
        }
        neo4rs::Error::Neo4j(_) | neo4rs::Error::UnexpectedMessage(_) => e.of_kind(Kind::StoreRefused),
        _ => e,
    }
}

/// Backtick-quote a label, relationship type or name for Cypher.
fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

impl Neo4j {
    pub fn new(settings: Neo4jSettings, target: Target) -> Self {
        Neo4j { settings, target }
    }

    /// Nodes per label and relationships per type, from Neo4j's count store.
    async fn count_store(&self, graph: &Graph) -> Result<BTreeMap<String, u64>> {
        let step = "count nodes and relationships";
        let mut counts = BTreeMap::new();
        let total = self
            .rows(graph, "MATCH (n) RETURN count(n) AS n", step)
            .await?;
        counts.insert(
            "nodes".to_string(),
            total[0].get::<i64>("n").unwrap_or(0) as u64,
        );
        let total = self
            .rows(graph, "MATCH ()-[r]->() RETURN count(r) AS n", step)
            .await?;
        counts.insert(
            "relationships".to_string(),
            total[0].get::<i64>("n").unwrap_or(0) as u64,
        );
        for row in self
            .rows(graph, "CALL db.labels() YIELD label RETURN label", step)
            .await?
        {
            let label: String = row.get("label").unwrap_or_default();
            if label == TEMP_LABEL {
                continue;
            }
            let n = self
                .rows(
                    graph,
                    &format!("MATCH (n:{}) RETURN count(n) AS n", quote(&label)),
                    step,
                )
                .await?;
            let n = n[0].get::<i64>("n").unwrap_or(0) as u64;
            if n > 0 {
                counts.insert(format!("label:{label}"), n);
            }
        }
        for row in self
            .rows(
                graph,
                "CALL db.relationshipTypes() YIELD relationshipType RETURN relationshipType AS t",
                step,
            )
            .await?
        {
            let t: String = row.get("t").unwrap_or_default();
            let n = self
                .rows(
                    graph,
                    &format!("MATCH ()-[r:{}]->() RETURN count(r) AS n", quote(&t)),
                    step,
                )
                .await?;
            let n = n[0].get::<i64>("n").unwrap_or(0) as u64;
            if n > 0 {
                counts.insert(format!("type:{t}"), n);
            }
        }
        Ok(counts)
    }

    fn new_record(&self, server_version: String, edition: &str) -> ArtifactRecord {
        let mut record = ArtifactRecord::begun(server_version, jiff::Timestamp::now().to_string());
        record.details.insert("edition".into(), json!(edition));
        record
            .details
            .insert("database".into(), json!(self.settings.database));
        record
    }

    // ---- logical export ------------------------------------------------------

    /// The highest internal id `pattern` (binding `x`) matches now, 0 if none.
    /// Read as text: neo4rs 0.8 misreads some small integers (see `PROPS`).
    async fn highest_id(&self, graph: &Graph, pattern: &str) -> Result<i64> {
        let step = "export bounds";
        let rows = self
            .rows(
                graph,
                &format!("{pattern} RETURN toString(coalesce(max(id(x)), 0)) AS n"),
                step,
            )
            .await?;
        rows.first()
            .and_then(|row| row.get::<String>("n").ok())
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| Error::failure(step, "no highest id in the answer").service(SVC))
    }

    async fn export(
        &self,
        graph: &Graph,
        ctx: &BackupContext<'_>,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        let file = format!("neo4j_{}.ndjson.zst", ctx.timestamp);
        // Chunks of CHUNK_BYTES: 16 of them are 4 MB.
        artifact::export_zstd(ctx.dir, file, SVC, 16, |tx| async move {
            self.export_lines(graph, &tx, record).await
        })
        .await
    }

    async fn export_lines(
        &self,
        graph: &Graph,
        tx: &ExportSender,
        record: &mut ArtifactRecord,
    ) -> Result<()> {
        let mut out = LineSink {
            tx,
            chunk: Vec::with_capacity(CHUNK_BYTES * 2),
        };
        let mut header = Line::new("header");
        header.format = Some(LOGICAL_FORMAT.into());
        header.version = Some(LOGICAL_VERSION);
        header.name = Some(self.settings.database.clone());
        out.push(&header).await?;

        let step = "export schema";
        for row in self
            .rows(
                graph,
                "SHOW CONSTRAINTS YIELD name, createStatement RETURN name, createStatement",
                step,
            )
            .await?
        {
            let mut line = Line::new("constraint");
            line.name = row.get("name").ok();
            line.statement = row.get("createStatement").ok();
            out.push(&line).await?;
        }
        let indexes = "SHOW INDEXES YIELD name, owningConstraint, createStatement WHERE owningConstraint IS NULL AND name <> $temp RETURN name, createStatement";
        let mut stream = self
            .bounded(
                step,
                graph.execute(query(indexes).param("temp", TEMP_INDEX)),
            )
            .await?;
        while let Some(row) = self.bounded(step, stream.next()).await? {
            let mut line = Line::new("index");
            line.name = row.get("name").ok();
            line.statement = row.get("createStatement").ok();
            out.push(&line).await?;
        }

        // Neo4j Community has no snapshot reads: a scan also meets what is
        // written while it runs, and under a steady writer it could run for
        // ever. Each scan stops at the highest id that existed when it began
        // (ids are reused, so some entities written meanwhile may still
        // appear; the late-endpoint rule below keeps them consistent). The
        // relationship bound is read after the node scan, so every
        // relationship created with a node that was exported is exported too.
        let max_node_id = self.highest_id(graph, "MATCH (x)").await?;

        // Nodes.
        let step = "export nodes";
        let mut exported = IdSet::default();
        let mut labels: BTreeMap<String, u64> = BTreeMap::new();
        let mut nodes = 0u64;
        let cypher = format!(
            "MATCH (x) WHERE id(x) <= $max RETURN elementId(x) AS id, labels(x) AS labels, {PROPS} AS props"
        );
        let mut stream = self
            .bounded(
                step,
                graph.execute(query(&cypher).param("max", max_node_id)),
            )
            .await?;
        let mut vanished = 0u64;
        while let Some(row) = self.bounded(step, stream.next()).await? {
            let Some(node) = Entity::node(&row, step)? else {
                // Deleted while it was read: as if the scan had missed it.
                vanished += 1;
                continue;
            };
            count_labels(&mut labels, &node.labels);
            exported.insert(node.id);
            nodes += 1;
            out.push_entity(&node).await?;
        }
        tracing::info!(nodes, "neo4j: exported nodes");

        // Relationships; an endpoint the node pass did not see is exported first.
        let step = "export relationships";
        let mut types: BTreeMap<String, u64> = BTreeMap::new();
        let mut relationships = 0u64;
        let mut late_nodes = 0u64;
        let mut dangling = 0u64;
        let max_rel_id = self.highest_id(graph, "MATCH ()-[x]->()").await?;
        let cypher = format!(
            "MATCH (a)-[x]->(b) WHERE id(x) <= $max RETURN elementId(x) AS id, type(x) AS type, elementId(a) AS start, elementId(b) AS end, {PROPS} AS props"
        );
        let mut stream = self
            .bounded(step, graph.execute(query(&cypher).param("max", max_rel_id)))
            .await?;
        'rels: while let Some(row) = self.bounded(step, stream.next()).await? {
            let Some(rel) = Entity::relationship(&row, step)? else {
                dangling += 1;
                continue;
            };
            let [rel_type, start, end] = rel.rel.expect("a relationship has endpoints");
            for endpoint in [start, end] {
                if exported.contains(endpoint) {
                    continue;
                }
                let cypher = format!("MATCH (x) WHERE elementId(x) = $id RETURN elementId(x) AS id, labels(x) AS labels, {PROPS} AS props");
                let mut found = self
                    .bounded(step, graph.execute(query(&cypher).param("id", endpoint)))
                    .await?;
                let row = self.bounded(step, found.next()).await?;
                match row
                    .as_ref()
                    .map(|row| Entity::node(row, step))
                    .transpose()?
                    .flatten()
                {
                    Some(node) => {
                        count_labels(&mut labels, &node.labels);
                        exported.insert(endpoint);
                        nodes += 1;
                        late_nodes += 1;
                        out.push_entity(&node).await?;
                    }
                    None => {
                        // Deleted since: so is this relationship, in any later state.
                        dangling += 1;
                        continue 'rels;
                    }
                }
            }
            count(&mut types, rel_type);
            relationships += 1;
            out.push_entity(&rel).await?;
        }
        tracing::info!(relationships, "neo4j: exported relationships");

        let mut end = Line::new("end");
        end.nodes = Some(nodes);
        end.relationships = Some(relationships);
        out.push(&end).await?;
        out.flush().await?;

        record.counts.insert("nodes".into(), nodes);
        record.counts.insert("relationships".into(), relationships);
        for (label, n) in labels {
            record.counts.insert(format!("label:{label}"), n);
        }
        for (t, n) in types {
            record.counts.insert(format!("type:{t}"), n);
        }
        record.details.insert("consistency".into(), json!("read-committed, bounded by the highest ids at the start; endpoints written during the export are included, relationships deleted during it are left out"));
        record
            .details
            .insert("late_nodes".into(), json!(late_nodes));
        record
            .details
            .insert("relationships_left_out".into(), json!(dangling));
        record
            .details
            .insert("nodes_left_out".into(), json!(vanished));
        Ok(())
    }

    // ---- logical restore -----------------------------------------------------

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

    async fn load(
        &self,
        graph: &Graph,
        ctx: &RestoreContext<'_>,
        relationships: Option<u64>,
    ) -> Result<()> {
        self.wipe(graph).await?;
        tracing::info!(service = %SVC, "database emptied; restoring nodes");

        let ids = load::IdMap::create(ctx.scratch)
            .map_err(|e| io_error(Some(SVC), "prepare load", ctx.scratch.display(), e))?;
        let schema = load::load_graph(
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

/// One more of `key` (allocating its name only the first time).
fn count(counts: &mut BTreeMap<String, u64>, key: &str) {
    match counts.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            counts.insert(key.to_string(), 1);
        }
    }
}

fn count_labels(counts: &mut BTreeMap<String, u64>, labels: &[&str]) {
    for label in labels {
        count(counts, label);
    }
}

/// A node or relationship as the export reads it, borrowed from its row.
struct Entity<'r> {
    id: &'r str,
    labels: Vec<&'r str>,
    /// A relationship's type, start and end.
    rel: Option<[&'r str; 3]>,
    props: props_json::PropsJson,
}

impl<'r> Entity<'r> {
    /// The node of a row; `None` when it was deleted while the row was read:
    /// reads are read-committed, so a node matched by the scan and deleted
    /// by another transaction before its projection comes back with nulls.
    fn node(row: &'r neo4rs::Row, step: &str) -> Result<Option<Self>> {
        let bad = |e: neo4rs::DeError| Error::failure(step, e.to_string()).service(SVC);
        let (Some(id), Some(labels), Some(props)) = (
            row.get("id").map_err(bad)?,
            row.get("labels").map_err(bad)?,
            row.get("props").map_err(bad)?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Entity {
            id,
            labels,
            rel: None,
            props,
        }))
    }

    /// The relationship of a row; `None` when it, or an endpoint, was
    /// deleted while the row was read (see [`Entity::node`]).
    fn relationship(row: &'r neo4rs::Row, step: &str) -> Result<Option<Self>> {
        let bad = |e: neo4rs::DeError| Error::failure(step, e.to_string()).service(SVC);
        let (Some(id), Some(rel_type), Some(start), Some(end), Some(props)) = (
            row.get("id").map_err(bad)?,
            row.get("type").map_err(bad)?,
            row.get("start").map_err(bad)?,
            row.get("end").map_err(bad)?,
            row.get("props").map_err(bad)?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Entity {
            id,
            labels: Vec::new(),
            rel: Some([rel_type, start, end]),
            props,
        }))
    }

    /// The line, with `Line`'s fields in `Line`'s order.
    fn write(&self, out: &mut Vec<u8>) {
        let text = |out: &mut Vec<u8>, name: &str, value: &str| {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            serde_json::to_writer(&mut *out, value).expect("a string serialises");
        };
        match &self.rel {
            None => {
                out.extend_from_slice(br#"{"type":"node""#);
                text(out, "id", self.id);
                out.extend_from_slice(br#","labels":"#);
                serde_json::to_writer(&mut *out, &self.labels).expect("labels serialise");
            }
            Some([rel_type, start, end]) => {
                out.extend_from_slice(br#"{"type":"rel""#);
                text(out, "id", self.id);
                text(out, "rel_type", rel_type);
                text(out, "start", start);
                text(out, "end", end);
            }
        }
        out.extend_from_slice(br#","props":"#);
        out.extend_from_slice(&self.props.0);
        out.push(b'}');
    }
}

/// Buffers serialised lines and sends them to the writer in chunks.
struct LineSink<'a> {
    tx: &'a ExportSender,
    chunk: Vec<u8>,
}

impl LineSink<'_> {
    async fn push(&mut self, line: &Line) -> Result<()> {
        serde_json::to_writer(&mut self.chunk, line).expect("line serialises");
        self.end_line().await
    }

    async fn push_entity(&mut self, entity: &Entity<'_>) -> Result<()> {
        let start = self.chunk.len();
        entity.write(&mut self.chunk);
        let bytes = self.chunk.len() - start;
        if bytes > MAX_LINE {
            let what = if entity.rel.is_some() {
                "relationship"
            } else {
                "node"
            };
            return Err(Error::failure(
                "export",
                format!(
                    "{what} {} has {} of properties, more than the {} a logical restore loads as one row",
                    entity.id,
                    crate::report::size(bytes as u64),
                    crate::report::size(MAX_LINE as u64)
                ),
            )
            .service(SVC)
            .hint("back this database up with --neo4j-method dump, which has no such bound"));
        }
        self.end_line().await
    }

    async fn end_line(&mut self) -> Result<()> {
        self.chunk.push(b'\n');
        if self.chunk.len() >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_BYTES * 2));
        self.tx.send(chunk).await
    }
}

/// Full decode of a logical export: every line parsed and checked, the totals
/// against the end record and the manifest.
fn check_export(path: &Path, record: &ArtifactRecord) -> Result<()> {
    let fail = |msg: String| {
        Error::damaged("verify export", format!("{}: {msg}", path.display()))
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
        let line: load::Record<load::TypedProps> =
            serde_json::from_slice(bytes).map_err(|e| ChunkError {
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

/// The operations of each method (to move into their files).
impl Neo4j {
    fn plan_logical_backup(&self, ctx: &BackupContext<'_>) -> Vec<String> {
        let db = &self.settings.database;
        vec![
            format!("connect to {} as {} (database {db}), online: no downtime", mask_userinfo(&self.settings.uri), self.settings.user),
            "SHOW CONSTRAINTS / SHOW INDEXES: every schema definition".into(),
            "MATCH (x): every node with its labels and properties; then MATCH (a)-[x]->(b): every relationship".into(),
            format!("write {}/neo4j_{}.ndjson.zst", ctx.dir.display(), ctx.timestamp),
        ]
    }

    async fn backup_logical(
        &self,
        graph: &Graph,
        ctx: &BackupContext<'_>,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        self.export(graph, ctx, record).await
    }

    fn plan_logical_restore(&self, record: &ArtifactRecord) -> Vec<String> {
        vec![
            format!("wipe database {}: drop constraints and indexes, DETACH DELETE every node in batches", self.settings.database),
            format!("load nodes then relationships from {} in batches of {} ({} transactions in flight)", record.file, self.settings.batch_size, self.settings.transactions),
            "create constraints and indexes, wait for them, remove the temporary restore markers".into(),
        ]
    }

    async fn restore_logical(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        let graph = self.graph().await?;
        let relationships = record.counts.get("relationships").copied();
        self.load(&graph, ctx, relationships).await
    }
}

/// A logical export, decoded in full (offline).
async fn check_logical(artifact: &Path, record: &ArtifactRecord) -> Result<()> {
    let path = artifact.to_path_buf();
    let record = record.clone();
    super::blocking(SVC, move || check_export(&path, &record)).await
}

#[async_trait]
impl Store for Neo4j {
    fn address(&self) -> String {
        self.settings.uri.clone()
    }

    fn service(&self) -> Service {
        SVC
    }

    async fn probe(&self) -> Result<ServerInfo> {
        // The server, not its user database: a restore of a dump must be
        // able to repair a database that does not start.
        let (version, edition) = self.server_version().await.map_err(|e| {
            match StoppedServer::of(SVC, &self.settings.uri).left_by() {
                Some(by) => e.hint(format!(
                    "{by} and was killed before starting it again: the next backup or restore on this host starts it (IT_NEO4J_START_CMD), or start it yourself"
                )),
                None => e,
            }
        })?;
        Ok(ServerInfo {
            version: format!("{version} {edition}"),
            endpoint: mask_userinfo(&self.settings.uri),
        })
    }

    async fn recover_from_killed_run(&self) -> Result<()> {
        let stopped = StoppedServer::of(SVC, &self.settings.uri);
        let Some(by) = stopped.left_by() else {
            return Ok(());
        };
        // Whether Bolt answers now says nothing: the run may have been
        // killed inside the stop command, with the server still shutting
        // down. The stop command again (it waits for the end of a shutdown
        // and is harmless on a stopped server), then the start.
        tracing::warn!(service = %SVC, "{by} and was killed before starting it again: stopping and starting it");
        self.restart_after(&by).await?;
        stopped.clear();
        Ok(())
    }

    fn backup_plan(&self, ctx: &BackupContext<'_>) -> Vec<String> {
        match self.settings.method {
            Neo4jMethod::Logical => self.plan_logical_backup(ctx),
            Neo4jMethod::Dump => self.plan_dump_backup(ctx),
        }
    }

    async fn backup(&self, ctx: &BackupContext<'_>) -> Result<StoreBackup> {
        let graph = self.graph().await?;
        let (version, edition) = self.version_and_edition(&graph).await?;
        let mut record = self.new_record(version, &edition);
        let method = self.settings.method;
        record.method = method.manifest_name().into();
        record.format = method.manifest_format().into();
        let artifact = match method {
            Neo4jMethod::Logical => self.backup_logical(&graph, ctx, &mut record).await?,
            Neo4jMethod::Dump => self.backup_dump(graph, ctx, &mut record).await?,
        };
        Ok(StoreBackup::finished(SVC, artifact, record))
    }

    async fn check_artifact(&self, artifact: &Path, record: &ArtifactRecord) -> Result<()> {
        match Neo4jMethod::of(record)? {
            Neo4jMethod::Logical => check_logical(artifact, record).await,
            // A dump is neo4j-admin's own format; the checksum is what we can
            // prove without it (prepare_restore asks neo4j-admin to read it).
            Neo4jMethod::Dump => Ok(()),
        }
    }

    fn restore_plan(&self, record: &ArtifactRecord) -> Vec<String> {
        match Neo4jMethod::of(record) {
            Ok(Neo4jMethod::Logical) => self.plan_logical_restore(record),
            Ok(Neo4jMethod::Dump) => self.plan_dump_restore(record),
            Err(e) => vec![e.message],
        }
    }

    async fn prepare_restore(
        &self,
        ctx: &RestoreContext<'_>,
        record: &ArtifactRecord,
    ) -> Result<()> {
        match Neo4jMethod::of(record)? {
            // The logical format loads into any version.
            Neo4jMethod::Logical => Ok(()),
            Neo4jMethod::Dump => self.prepare_dump_restore(ctx, record).await,
        }
    }

    async fn restore(&self, ctx: &RestoreContext<'_>, record: &ArtifactRecord) -> Result<()> {
        match Neo4jMethod::of(record)? {
            Neo4jMethod::Logical => self.restore_logical(ctx, record).await,
            Neo4jMethod::Dump => self.restore_dump(ctx).await,
        }
    }

    async fn counts(&self, _record: &ArtifactRecord) -> Result<BTreeMap<String, u64>> {
        let graph = self.graph().await?;
        self.count_store(&graph).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method is read back from the name the manifest records for it,
    /// that name is one the manifest's schema allows, and `ALL` lists every
    /// method the command line offers.
    #[test]
    fn every_method_is_read_back_from_its_manifest_name() {
        use clap::ValueEnum;
        let schema = include_str!("../../../docs/manifest.schema.json");
        assert_eq!(Neo4jMethod::ALL, Neo4jMethod::value_variants());
        let mut record = ArtifactRecord::begun(String::new(), String::new());
        for method in Neo4jMethod::ALL {
            record.method = method.manifest_name().into();
            assert_eq!(Neo4jMethod::of(&record).unwrap(), method);
            assert!(schema.contains(&format!("\"{}\"", record.method)));
        }
        record.method = "tape".into();
        let err = Neo4jMethod::of(&record).unwrap_err();
        assert!(
            err.message.contains("unknown Neo4j method 'tape'"),
            "{}",
            err.message
        );
    }

    #[test]
    fn id_set_holds_numeric_and_other_ids() {
        let mut set = IdSet::default();
        set.insert("4:0b5c:12345");
        set.insert("weird-id");
        assert!(set.contains("4:0b5c:12345"));
        assert!(!set.contains("4:0b5c:12346"));
        assert!(set.contains("weird-id"));
    }

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
        check_export(&path, &record)
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
