//! The logical backup: the schema, every node, then every relationship,
//! read over Bolt and written as lines of the logical format.
//!
//! Reads are read-committed, so writes during an export can yield a
//! relationship whose endpoint was not exported: the endpoint is then fetched
//! and exported before it, and a relationship whose endpoint no longer exists
//! is left out. Either way the restore never fails on it.

use std::collections::BTreeMap;

use neo4rs::{query, Graph};
use serde_json::json;

use super::props_json;
use super::{IdSet, Line, CHUNK_BYTES, LOGICAL_FORMAT, LOGICAL_VERSION, MAX_LINE, TEMP_INDEX};
use crate::artifact::{self, ExportSender, PendingArtifact};
use crate::consistency::Position;
use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::stores::neo4j::{Neo4j, SVC};
use crate::stores::BackupContext;

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

impl Neo4j {
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

    /// Export the user database over `graph` into `neo4j_<TS>.ndjson.zst`,
    /// filling the record's counts and details.
    pub(in crate::stores::neo4j) async fn backup_logical(
        &self,
        graph: &Graph,
        ctx: &BackupContext<'_>,
        record: &mut ArtifactRecord,
    ) -> Result<PendingArtifact> {
        let file = format!("neo4j_{}.ndjson.zst", ctx.timestamp);
        // Chunks of CHUNK_BYTES: 16 of them are 4 MB.
        artifact::export_zstd(ctx.artifacts, file, SVC, 16, |tx| async move {
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
        self.export_schema(graph, &mut out).await?;

        // Neo4j Community has no snapshot reads: a scan also meets what is
        // written while it runs, and under a steady writer it could run for
        // ever. Each scan stops at the highest id that existed when it began
        // (ids are reused, so some entities written meanwhile may still
        // appear; the late-endpoint rule below keeps them consistent). The
        // relationship bound is read after the node scan, so every
        // relationship created with a node that was exported is exported too.
        let mut exported = Exported::default();
        // No snapshot: the data is what the scans met from their start to
        // their end, a span (Community tells no transaction id to pin it).
        let from = jiff::Timestamp::now();
        self.export_nodes(graph, &mut out, &mut exported).await?;
        self.export_relationships(graph, &mut out, &mut exported)
            .await?;
        let until = jiff::Timestamp::now();
        record.position = Some(Position::span("export_span", from, until));

        let mut end = Line::new("end");
        end.nodes = Some(exported.nodes);
        end.relationships = Some(exported.relationships);
        out.push(&end).await?;
        out.flush().await?;
        exported.record_into(record);
        Ok(())
    }

    /// Every constraint, and every index that no constraint owns.
    async fn export_schema(&self, graph: &Graph, out: &mut LineSink<'_>) -> Result<()> {
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
        Ok(())
    }

    /// Every node up to the highest id there is now.
    async fn export_nodes(
        &self,
        graph: &Graph,
        out: &mut LineSink<'_>,
        exported: &mut Exported,
    ) -> Result<()> {
        let max_node_id = self.highest_id(graph, "MATCH (x)").await?;
        let step = "export nodes";
        let cypher = format!(
            "MATCH (x) WHERE id(x) <= $max RETURN elementId(x) AS id, labels(x) AS labels, {PROPS} AS props"
        );
        let mut stream = self
            .bounded(
                step,
                graph.execute(query(&cypher).param("max", max_node_id)),
            )
            .await?;
        while let Some(row) = self.bounded(step, stream.next()).await? {
            let Some(node) = Entity::node(&row, step)? else {
                // Deleted while it was read: as if the scan had missed it.
                exported.vanished += 1;
                continue;
            };
            exported.add_node(node.id, &node.labels);
            out.push_entity(&node).await?;
        }
        tracing::info!(nodes = exported.nodes, "neo4j: exported nodes");
        Ok(())
    }

    /// Every relationship up to the highest id there is now; an endpoint the
    /// node pass did not see is exported first.
    async fn export_relationships(
        &self,
        graph: &Graph,
        out: &mut LineSink<'_>,
        exported: &mut Exported,
    ) -> Result<()> {
        let step = "export relationships";
        let max_rel_id = self.highest_id(graph, "MATCH ()-[x]->()").await?;
        let cypher = format!(
            "MATCH (a)-[x]->(b) WHERE id(x) <= $max RETURN elementId(x) AS id, type(x) AS type, elementId(a) AS start, elementId(b) AS end, {PROPS} AS props"
        );
        let mut stream = self
            .bounded(step, graph.execute(query(&cypher).param("max", max_rel_id)))
            .await?;
        'rels: while let Some(row) = self.bounded(step, stream.next()).await? {
            let Some(rel) = Entity::relationship(&row, step)? else {
                exported.dangling += 1;
                continue;
            };
            let [rel_type, start, end] = rel.rel.expect("a relationship has endpoints");
            for endpoint in [start, end] {
                if exported.ids.contains(endpoint) {
                    continue;
                }
                if !self
                    .export_late_endpoint(graph, endpoint, out, exported)
                    .await?
                {
                    // Deleted since: so is this relationship, in any later state.
                    exported.dangling += 1;
                    continue 'rels;
                }
            }
            count(&mut exported.types, rel_type);
            exported.relationships += 1;
            out.push_entity(&rel).await?;
        }
        tracing::info!(
            relationships = exported.relationships,
            "neo4j: exported relationships"
        );
        Ok(())
    }

    /// Export the node `endpoint` of a relationship, which the node scan did
    /// not see; false when it no longer exists.
    async fn export_late_endpoint(
        &self,
        graph: &Graph,
        endpoint: &str,
        out: &mut LineSink<'_>,
        exported: &mut Exported,
    ) -> Result<bool> {
        let step = "export relationships";
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
                exported.add_node(endpoint, &node.labels);
                exported.late_nodes += 1;
                out.push_entity(&node).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// What an export has written so far: the nodes' ids and what the manifest
/// records.
#[derive(Default)]
struct Exported {
    ids: IdSet,
    labels: BTreeMap<String, u64>,
    types: BTreeMap<String, u64>,
    nodes: u64,
    relationships: u64,
    /// Endpoints the node scan did not see, exported before their relationship.
    late_nodes: u64,
    /// Nodes deleted while the scan read them.
    vanished: u64,
    /// Relationships deleted, or whose endpoint was deleted, while they were read.
    dangling: u64,
}

impl Exported {
    fn add_node(&mut self, id: &str, labels: &[&str]) {
        count_labels(&mut self.labels, labels);
        self.ids.insert(id);
        self.nodes += 1;
    }

    /// The counts and the consistency details, into the manifest's record.
    fn record_into(self, record: &mut ArtifactRecord) {
        record.counts.insert("nodes".into(), self.nodes);
        record
            .counts
            .insert("relationships".into(), self.relationships);
        for (label, n) in self.labels {
            record.counts.insert(format!("label:{label}"), n);
        }
        for (t, n) in self.types {
            record.counts.insert(format!("type:{t}"), n);
        }
        record.details.insert("consistency".into(), json!("read-committed, bounded by the highest ids at the start; endpoints written during the export are included, relationships deleted during it are left out"));
        record
            .details
            .insert("late_nodes".into(), json!(self.late_nodes));
        record
            .details
            .insert("relationships_left_out".into(), json!(self.dangling));
        record
            .details
            .insert("nodes_left_out".into(), json!(self.vanished));
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
                    crate::human::size(bytes as u64),
                    crate::human::size(MAX_LINE as u64)
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
